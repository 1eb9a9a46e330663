"""Resources of sftc: settings, artifact paths, GPU, price data, node routing."""
