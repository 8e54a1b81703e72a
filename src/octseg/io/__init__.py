"""Every file octseg reads or writes, one module per kind: what a path is before it is opened
(``files``), 2-D images and masks (``images``), MetaImage/NIfTI volumes (``volumes``), the small
CSV/JSON side tables (``tables``), and output folders and atomic writes (``outputs``). Nothing here
imports a higher layer."""
