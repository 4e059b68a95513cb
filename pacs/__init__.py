"""The hospital's PACS, over DICOMweb: search and retrieve studies (pacs.client, QIDO-RS and WADO-RS through
the dicomweb-client library) and send a run's results back as DICOM objects (pacs.export, built with highdicom:
segmentations as SEG, findings as a TID 1500 measurement report, overlays as secondary capture, the report as
encapsulated PDF; STOW-RS). JointScan keeps a retrieved study by its Study Instance UID and accession number
only: names and other header text are read by nothing but the upload path's de-identifying reader."""
