"""The numerical core of qsmprep: pure numpy/scipy functions, arrays in, arrays out.

This package never imports nipype, nibabel, pybids or touches the file system
(``tests/algorithms/test_layering.py`` checks it). Units are in argument names:
``field_ppm``, ``field_hz``, ``echo_times_s``, ``voxel_size_mm``, ``b0_tesla``.
"""
