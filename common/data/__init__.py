"""Data: dataset registry, data configuration, image folders, transforms, the built-in shapes set."""
