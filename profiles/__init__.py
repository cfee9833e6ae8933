"""Built-in device profiles (TOML), shipped inside the wheel as edgecompress.profiles."""
