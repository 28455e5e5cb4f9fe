"""The lowest layer: small utilities every other layer may use, importing nothing else of ctreduce.

:mod:`.dhash` (the 64-bit dHash value and its text), :mod:`.versions` (library versions recorded in
outputs), :mod:`.workers` (process pools and the Ray session), :mod:`.devices` (torch devices and the
CPU thread policy; torch is imported only where a device is made), :mod:`.extras` (which optional extra
provides a missing library), :mod:`.charts` (SVG bar and line charts for the report, without a plotting
library), :mod:`.validation` (settings mistakes reported in one line, layers of settings merged),
:mod:`.plugins` (modules outside ctreduce that register a measure, a pre-training method or an export
format).
"""
