"""Power sources: small readers, auto-detected, and a sampler that records a timestamped trace.

Each reader has ``name``, ``kind`` ("power": instantaneous watts, or "energy": a cumulative joule counter),
``describe()`` for ``hello``, and ``read()`` returning (total, {rail: watts}). Sysfs readers take a root path so
tests can point them at fixture trees; ``vcgencmd`` and the external meter are commands found on PATH.
No source is reported as None, never as zero watts.
"""

import glob
import os
import re
import shlex
import shutil
import subprocess
import threading

from .measure import now_ns
from .system import _join, _read, _read_int

# The documented power trees of the Jetson modules (NVIDIA Jetson Linux Developer Guide, "Platform Power and
# Performance", on-board power monitors), by rail label. A rail fed from another measured rail is already counted in
# it: adding both counts it twice. So the total is the input rail where the board measures one, else the sum of the
# rails that are not inside another measured rail.
# The module's input rail: everything else the board measures is inside it (Orin Nano/NX and Xavier NX VDD_IN,
# Nano JetPack 4 POM_5V_IN).
TOTAL_RAILS = ("VDD_IN", "POM_5V_IN")
# {rail: the measured rail that feeds it}.
SUB_RAILS = {
    "VDD_CPU_GPU_CV": "VDD_IN",  # Orin Nano, Orin NX, Xavier NX
    "VDD_SOC": "VDD_IN",
    "POM_5V_GPU": "POM_5V_IN",  # Nano (JetPack 4)
    "POM_5V_CPU": "POM_5V_IN",
    "VDDQ_VDD2_1V8AO": "VIN_SYS_5V0",  # AGX Orin: the DRAM rail is fed from the 5 V system rail
}
# Top-level rails of a board without an input rail (AGX Orin): their sum is the module's draw.
TOP_RAILS = ("VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0")
MAX_SAMPLES = 100000
COMMAND_TIMEOUT_S = 5.0


class PowerError(Exception):
    """A source that was found but cannot be read."""


def _number(name):
    digits = re.findall(r"\d+", os.path.basename(name))
    return int(digits[-1]) if digits else -1


def explain(summed, inside, why=""):
    """'total = A + B; C is inside B': which rails make the total, and where the others are counted."""
    text = "total = " + " + ".join(summed) + (" " + why if why else "")
    parents = []
    for parent in inside.values():
        if parent not in parents:
            parents.append(parent)
    for parent in parents:
        rails = [rail for rail in inside if inside[rail] == parent]
        text += "; {} {} inside {}".format(", ".join(rails), "is" if len(rails) == 1 else "are", parent)
    return text


class _RailReader(object):
    """Shared by the INA3221 readers: rails in watts; the total from the board's documented power tree."""

    kind = "power"
    min_interval_s = 0.001

    def __init__(self, channels):
        self.channels = channels  # [(rail label, function returning watts)]
        labels = [label for label, _ in channels]
        self.total_rail = next((r for r in TOTAL_RAILS if r in labels), None)
        if self.total_rail:
            self.summed = [self.total_rail]
            self.inside = dict((label, self.total_rail) for label in labels if label != self.total_rail)
        else:
            self.inside = dict((label, SUB_RAILS[label]) for label in labels if SUB_RAILS.get(label) in labels)
            self.summed = [label for label in labels if label not in self.inside]
        # Rails no documented tree names may overlap (or miss) each other: their sum is then only an estimate.
        self.partial = self.total_rail is None and any(label not in TOP_RAILS for label in self.summed)

    def read(self):
        rails = {}
        for label, watts in self.channels:
            value = watts()
            if value is None:
                raise PowerError("{}: rail {} is unreadable".format(self.name, label))
            rails[label] = value
        return sum(rails[label] for label in self.summed), rails

    def describe(self):
        if self.total_rail:
            why = "(the input rail)"
        elif self.partial:
            why = "(rails outside the documented power trees: they may overlap or miss some)"
        else:
            why = ""
        return {"name": self.name, "kind": self.kind, "rails": [label for label, _ in self.channels],
                "total_rail": self.total_rail, "partial": self.partial, "summed": list(self.summed),
                "inside": dict(self.inside), "note": explain(self.summed, self.inside, why)}


def _unique(label, taken):
    name, suffix = label, 1
    while name in taken:
        suffix += 1
        name = "{}#{}".format(label, suffix)
    taken.add(name)
    return name


class Ina3221Hwmon(_RailReader):
    """Jetson JetPack 5/6, mainline driver: .../ina3221/<bus>-0040/hwmon/hwmon*/in<K>_{label,input}, curr<K>_input."""

    name = "ina3221"

    def __init__(self, root="/"):
        channels, taken = [], set()
        pattern = _join(root, "/sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*")
        for hwmon in sorted(glob.glob(pattern)):
            for label_path in sorted(glob.glob(os.path.join(hwmon, "in*_label")), key=_number):
                k = _number(label_path)
                label = _read(label_path)
                # Channel 7 is the sum of the shunt voltages, not a rail; "NC" is an unconnected channel.
                if k == 7 or not label or label == "NC":
                    continue
                volts = os.path.join(hwmon, "in{}_input".format(k))
                amps = os.path.join(hwmon, "curr{}_input".format(k))
                if os.path.exists(volts) and os.path.exists(amps):
                    channels.append((_unique(label, taken), self._watts(volts, amps)))
        _RailReader.__init__(self, channels)

    @staticmethod
    def _watts(volts, amps):
        def read():
            mv, ma = _read_int(volts), _read_int(amps)
            return None if mv is None or ma is None else mv * ma / 1e6
        return read


class Ina3221xIio(_RailReader):
    """Jetson JetPack 4 (Nano, TX2), IIO driver: .../ina3221x/<bus>-<addr>/iio:device*/rail_name_K, in_powerK_input."""

    name = "ina3221x"

    def __init__(self, root="/"):
        channels, taken = [], set()
        for device in sorted(glob.glob(_join(root, "/sys/bus/i2c/drivers/ina3221x/*/iio:device*"))):
            for rail_path in sorted(glob.glob(os.path.join(device, "rail_name_*")), key=_number):
                k = _number(rail_path)
                label = _read(rail_path)
                if not label or label == "NC":
                    continue
                channels.append((_unique(label, taken), self._watts(device, k)))
        _RailReader.__init__(self, channels)

    @staticmethod
    def _watts(device, k):
        power = os.path.join(device, "in_power{}_input".format(k))
        volts = os.path.join(device, "in_voltage{}_input".format(k))
        amps = os.path.join(device, "in_current{}_input".format(k))

        def read():
            mw = _read_int(power)
            if mw is not None:
                return mw / 1e3
            mv, ma = _read_int(volts), _read_int(amps)
            return None if mv is None or ma is None else mv * ma / 1e6
        return read


_PMIC_LINE = re.compile(r"^\s*(\S+?)_([AV])\s+(?:current|volt)\(\d+\)=\s*([0-9.eE+-]+)\s*[AV]\s*$")


def parse_pmic_adc(text):
    """{rail: watts} from ``vcgencmd pmic_read_adc``; rails pair by name (the ADC indices differ)."""
    amps, volts = {}, {}
    for line in text.splitlines():
        match = _PMIC_LINE.match(line)
        if match:
            (amps if match.group(2) == "A" else volts)[match.group(1)] = float(match.group(3))
    return dict((rail, amps[rail] * volts[rail]) for rail in sorted(amps) if rail in volts)


def _run(argv, timeout=COMMAND_TIMEOUT_S):
    """stdout of a command, or a PowerError that says why not."""
    try:
        done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
    except (OSError, subprocess.SubprocessError) as exc:
        raise PowerError("{}: {}".format(argv[0], exc))
    if done.returncode != 0:
        raise PowerError("{} exited with {}: {}".format(" ".join(argv), done.returncode,
                                                        done.stderr.decode("utf-8", "replace").strip()[:200]))
    return done.stdout.decode("utf-8", "replace")


class PiPmic(object):
    """Raspberry Pi 5: the sum of V*I over the PMIC's rails is the on-board power."""

    name = "pi5-pmic"
    kind = "power"
    partial = False
    # A process per reading: sampled faster, it would take a core away from the model being measured.
    min_interval_s = 0.1

    def __init__(self, vcgencmd):
        self.argv = [vcgencmd, "pmic_read_adc"]

    def read(self):
        rails = parse_pmic_adc(_run(self.argv))
        if not rails:
            raise PowerError("vcgencmd pmic_read_adc printed no current/voltage pairs")
        return sum(rails.values()), rails

    def describe(self):
        rails = sorted(parse_pmic_adc(_run(self.argv)))
        return {"name": self.name, "kind": self.kind, "rails": rails, "total_rail": None, "partial": False,
                "summed": rails, "inside": {},
                "note": "total = the sum of the PMIC's {} rails (the draw behind the PMIC, not the USB-C input)"
                        .format(len(rails))}


class Rapl(object):
    """Intel RAPL: cumulative joules from energy_uj, corrected for the wrap-around at max_energy_range_uj."""

    name = "rapl"
    kind = "energy"
    min_interval_s = 0.001

    def __init__(self, root="/"):
        # The powercap layout: intel-rapl:N is package N (or psys, the platform), intel-rapl:N:M its sub-zones
        # (core, uncore, dram). core and uncore are inside their package; dram is a domain of its own, outside it.
        # psys, where there is one, is the platform's total and already includes the packages and the DRAM.
        zones = []  # [(zone directory name, domain name, energy path, range in uJ)]
        taken = set()
        for zone in sorted(glob.glob(_join(root, "/sys/class/powercap/intel-rapl:*"))):
            energy = os.path.join(zone, "energy_uj")
            span = _read_int(os.path.join(zone, "max_energy_range_uj"))
            if _read_int(energy) is None or not span:
                continue  # energy_uj is root-only on kernels patched for CVE-2020-8694
            name = _unique(_read(os.path.join(zone, "name")) or os.path.basename(zone), taken)
            zones.append((os.path.basename(zone), name, energy, span))
        names = dict((zone[0], zone[1]) for zone in zones)
        psys = [zone for zone in zones if zone[1] == "psys"]
        counted = psys or [zone for zone in zones if zone[0].count(":") == 1 or zone[1].split("#")[0] == "dram"]
        self.domains = [(name, energy, span) for _, name, energy, span in counted]
        self.inside = {}  # {domain not counted: the counted domain that includes it}
        for zone in zones:
            parent = "psys" if psys else names.get(zone[0].rsplit(":", 1)[0])
            if zone not in counted and parent:
                self.inside[zone[1]] = parent
        # Without psys, packages and DRAM are not the whole machine (chipset, disks, fans, the power supply).
        self.partial = not psys
        self._last = {}
        self._joules = {}

    def read(self):
        """(cumulative joules since the first read, {domain: cumulative joules})."""
        rails = {}
        for name, path, span in self.domains:
            raw = _read_int(path)
            if raw is None:
                raise PowerError("rapl: {} is unreadable".format(path))
            last = self._last.get(name)
            if last is not None:
                step = raw - last if raw >= last else span - last + raw
                self._joules[name] = self._joules.get(name, 0.0) + step / 1e6
            self._last[name] = raw
            rails[name] = self._joules.get(name, 0.0)
        return sum(rails.values()), rails

    def describe(self):
        summed = [d[0] for d in self.domains]
        why = "(the platform)" if not self.partial else "(CPU packages and DRAM only, not the whole machine)"
        return {"name": self.name, "kind": self.kind, "rails": summed,
                "total_rail": "psys" if not self.partial else None, "partial": self.partial,
                "summed": summed, "inside": dict(self.inside), "note": explain(summed, self.inside, why)}


_METER = re.compile(r"^\s*([0-9.eE+-]+)\s*(mW|W|mJ|J)?\s*$")


class Command(object):
    """An external meter: a command from the profile printing watts (``3.2`` or ``3.2 W``) or joules (``J``)."""

    name = "command"
    min_interval_s = 0.1  # a process per reading, as for vcgencmd

    def __init__(self, command):
        self.argv = shlex.split(command)
        if not self.argv:
            raise PowerError("the power command is empty")
        self.kind = "energy" if self._parse()[1] == "energy" else "power"
        self.partial = False

    def _parse(self):
        text = _run(self.argv).strip()
        match = _METER.match(text.splitlines()[-1] if text else "")
        if not match:
            raise PowerError("power command {!r} printed {!r}, not a number of W or J".format(" ".join(self.argv),
                                                                                           text[:80]))
        unit = match.group(2) or "W"
        value = float(match.group(1)) * (1e-3 if unit.startswith("m") else 1.0)
        return value, "energy" if unit.endswith("J") else "power"

    def read(self):
        value, kind = self._parse()
        if kind != self.kind:
            raise PowerError("power command switched between watts and joules")
        return value, {}

    def describe(self):
        return {"name": self.name, "kind": self.kind, "rails": [], "total_rail": None, "partial": False,
                "command": " ".join(self.argv), "summed": [], "inside": {},
                "note": "total = what {!r} prints".format(" ".join(self.argv))}


def _vcgencmd():
    return shutil.which("vcgencmd")


def _candidates(root):
    """Sources in order of preference, each built only when asked for (vcgencmd is a process per call)."""
    yield "ina3221", lambda: Ina3221Hwmon(root)
    yield "ina3221x", lambda: Ina3221xIio(root)
    yield "pi5-pmic", lambda: PiPmic(_vcgencmd()) if _vcgencmd() else None
    yield "rapl", lambda: Rapl(root)


def _usable(reader):
    if reader is None:
        return False
    if isinstance(reader, _RailReader) and not reader.channels or isinstance(reader, Rapl) and not reader.domains:
        return False
    try:
        reader.read()
    except PowerError:
        return False
    return True


def detect(root="/"):
    """Every power source found on this device, as ``hello`` reports them."""
    found = []
    for _, build in _candidates(root):
        reader = build()
        if _usable(reader):
            try:
                found.append(reader.describe())
            except PowerError:
                continue
    return found


def open_source(root="/", source="auto", command=None):
    """The reader to sample: ``auto`` picks the profile's command, else the first source found; ``none`` is None.

    A named source that is not there is a PowerError (the host asked for something specific).
    """
    if source == "none":
        return None
    if source == "command" or source == "auto" and command:
        if not command:
            raise PowerError("power source 'command' needs a power_command")
        reader = Command(command)
        reader.read()
        return reader
    names = []
    for name, build in _candidates(root):
        names.append(name)
        if source in ("auto", name):
            reader = build()
            if _usable(reader):
                return reader
            if source == name:
                raise PowerError("power source {!r} is not available on this device".format(name))
    if source != "auto":
        raise PowerError("unknown power source {!r}; known: auto, none, command, {}".format(source, ", ".join(names)))
    return None


class Sampler(object):
    """Reads a source every ``interval_s`` in a background thread: a trace of (now_ns, value) pairs.

    The first sample is taken in ``start`` and the last in ``stop``, so the trace brackets whatever ran between.
    Past MAX_SAMPLES the trace is thinned to every other sample and the interval doubled, keeping it bounded.
    """

    def __init__(self, reader, interval_s=0.01):
        self.reader = reader
        self.interval_s = max(float(interval_s), getattr(reader, "min_interval_s", 0.001))
        self.t_ns = []
        self.values = []
        self.errors = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="power-sampler")
        self._thread.daemon = True
        self._lock = threading.Lock()

    def _sample(self):
        t0 = now_ns()
        try:
            value, _ = self.reader.read()
        except PowerError as exc:
            if len(self.errors) < 10:
                self.errors.append(str(exc))
            return
        t1 = now_ns()
        with self._lock:
            # A slow reader (a process per call) is stamped at the middle of its call.
            self.t_ns.append((t0 + t1) // 2)
            self.values.append(value)
            if len(self.values) >= MAX_SAMPLES:
                self.t_ns, self.values = self.t_ns[::2], self.values[::2]
                self.interval_s *= 2

    def _loop(self):
        while not self._stop.wait(self.interval_s):
            self._sample()

    def start(self):
        self._sample()
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join()
        self._sample()
        return self.trace()

    def trace(self):
        with self._lock:
            return {"source": self.reader.name, "kind": self.kind_unit()[0], "unit": self.kind_unit()[1],
                    "partial": self.reader.partial, "t_ns": list(self.t_ns), "values": list(self.values),
                    "interval_s": self.interval_s, "errors": list(self.errors)}

    def kind_unit(self):
        return (self.reader.kind, "W" if self.reader.kind == "power" else "J")


def mean_power_w(trace):
    """Mean power over a whole trace (the idle reading): time-weighted for watts, a difference for joules."""
    t, v = trace["t_ns"], trace["values"]
    if len(t) < 2 or t[-1] <= t[0]:
        return v[0] if v and trace["kind"] == "power" else None
    seconds = (t[-1] - t[0]) / 1e9
    if trace["kind"] == "energy":
        return (v[-1] - v[0]) / seconds
    area = sum((t[i + 1] - t[i]) / 1e9 * (v[i] + v[i + 1]) / 2.0 for i in range(len(t) - 1))
    return area / seconds


def idle_reading(reader, seconds=0.5, interval_s=0.01):
    """Sample the source for ``seconds`` with nothing running: (trace, mean watts)."""
    sampler = Sampler(reader, interval_s).start()
    threading.Event().wait(seconds)  # the idle window itself, not a synchronisation
    trace = sampler.stop()
    return trace, mean_power_w(trace)
