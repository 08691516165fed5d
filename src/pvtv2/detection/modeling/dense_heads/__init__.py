"""One-stage heads: the ATSS / GFL frame (:mod:`.anchor_point_detector`), their convolution towers
(:mod:`.tower_heads`), and the labels 1..K -> K-logit mixin of RetinaNet and FCOS (:mod:`.foreground_labels`).
"""
