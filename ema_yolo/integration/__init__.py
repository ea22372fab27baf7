"""Glue between ema-yolo and a stock Ultralytics install: registration, import hook, offline setup."""
