"""maskray model: torchvision Mask R-CNN construction, model bundles, training and evaluation."""
