"""Where and how fast: devices, the launch and process group, precision and loader sizing."""
