"""What every stage shares, by concern: ``cli`` (entry, errors, flags, output checks), ``run`` (resume
state, manifests, atomic writes), ``data`` (registry, data configuration, image folders, transforms),
``compute`` (devices, launch, process group, precision), ``train`` (seeding, optimiser rules, accuracy),
``ops`` (DSA, ZCA); ``prepare`` and ``viz`` are commands (``python -m common.prepare``/``common.viz``)."""
