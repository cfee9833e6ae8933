"""Maps the three source roots of the one distribution: host/, device_agent/ and profiles/."""

from setuptools import find_packages, setup

setup(
    package_dir={
        "": "host",
        "edgecompress_agent": "device_agent/edgecompress_agent",
        "edgecompress.profiles": "profiles",
    },
    packages=[*find_packages("host"), "edgecompress_agent", "edgecompress.profiles"],
    package_data={"edgecompress.profiles": ["*.toml"], "edgecompress": ["checkpoints/*.pt"]},
)
