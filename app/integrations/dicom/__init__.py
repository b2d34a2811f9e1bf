"""DICOM interfaces: the Modality Worklist SCP and MPPS (see docs/dicom.md)."""
