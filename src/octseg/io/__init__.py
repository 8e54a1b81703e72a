"""Every file octseg reads or writes, one module per kind: what a path is before it is opened
(``files``), 2-D images and masks (``images``), MetaImage/NIfTI volumes (``volumes``), the small
CSV/JSON side tables (``tables``), output folders and atomic writes (``outputs``), clinic formats
(``vendor``: Heidelberg, Topcon, Zeiss, DICOM OCT; the optional ``formats`` extra) and DICOM
Segmentation output (``dicom_seg``). Nothing here imports a higher layer."""
