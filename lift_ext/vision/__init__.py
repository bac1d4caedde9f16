"""The vision suite: image-classification tasks rendered offline (glyphs and digits, structured
scenes, textures; lift_ext.vision.tasks), a small timm ViT pre-trained in-house on a disjoint
upstream set with a LoRA + head adapter (lift_ext.vision.backbone), and the headroom and first
ranking of methods on it (lift_ext.vision.bench, run by benchmarks/vision_headroom.py)."""
