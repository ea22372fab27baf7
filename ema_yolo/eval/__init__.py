"""Evaluation with the field's protocols (pycocotools COCOeval; the VisDrone2019-DET rules), and `ema-yolo eval`."""
