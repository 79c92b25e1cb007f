"""What every stage shares: dataset registry, image folders, transforms, seeding,
devices, manifests and atomic writes."""
