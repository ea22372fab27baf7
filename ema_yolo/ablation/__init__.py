"""The ablation harness: model families and variants by name (`variants`), and `ema-yolo compare` (`compare`)."""
