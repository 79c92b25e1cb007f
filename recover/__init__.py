"""recover stage: optimisation-based synthesis of a distilled ImageFolder.

One loop serves three methods (docs/methods/sre2l.md, cda.md and delt.md):

- DELT: ``--init-data-path <rank_select output> --use-early-late --round-iterations RI``;
- SRe2L: ``--init noise --train-data-path <train>`` (all images, all iterations);
- CDA: SRe2L plus ``--easy2hard-mode cosine --milestone m``.

Past DELT (docs/methods/fadrm.md, edc.md): ``--stage-sizes``/``--residual-alpha`` (FADRM),
several ``--arch-path`` in turn (FADRM+, EDC), ``--class-stats``/``--bn-match``/``--stats-momentum``
(EDC's class-aware matching, statistics from ``python -m squeeze.class_stats``).

Modules: ``schedule`` (batch layout, EarlyLate rounds, lr cosine), ``augment`` (crop
curriculum, crop/flip/roll), ``losses`` (BN-statistic loss), ``loop`` (one batch),
``output`` (resume state and manifest), ``synthesize`` (the command line),
``reference`` (the released-style loop, an oracle for tests and benchmarks).
"""
