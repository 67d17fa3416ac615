"""evaluation: turns a finished run directory into honest numbers and one readable report.

It reads only what training wrote (``hospitalnet.rundir``) and never the other way round: the
``hospitalnet`` library does not import this package. Modules, in the order the data flows::

    run directory -> rundata -> metrics, calibration -> compute -> plots -> report

- ``evaluation.rundata``  the run directory's files as validated values (DataError naming the file).
- ``evaluation.metrics``  pure functions: per-label AUROC, macro AUROC, patient bootstrap CIs.
- ``evaluation.calibration``  pure functions: Brier score, log loss, ECE on the same resamples.
- ``evaluation.compute``  every method x site x test set -> metrics.csv and summary.json.
- ``evaluation.plots``    the figures (matplotlib, colour-blind-safe), as PNG bytes.
- ``evaluation.privacy``  redaction of path-like text before anything is written.
- ``evaluation.report``   report.html (one self-contained page) and report.md.

Entry point: :func:`evaluation.report.render_report`.
"""
