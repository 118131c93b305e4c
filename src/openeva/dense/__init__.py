"""Beyond the image vector: training-free open-vocabulary segmentation (``segment``, ``segmenter``) and the ViTDet
simple feature pyramid (``pyramid``). Zero-shot video lives with the other protocols in ``openeva.eval.video``."""
