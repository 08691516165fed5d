"""The parts detectors are assembled from (no detector is registered here: see :mod:`..detectors`).

``necks/`` the FPN; ``anchors.py`` anchor layout and validity; ``boxes.py`` box coder, NMS, mask pasting;
``assigners/`` which anchor or proposal learns which box (max-IoU, ATSS, Hungarian) and the random RoI sampler;
``dense_heads/`` one-stage heads and frame; ``proposal/`` the two RPNs; ``roi_heads/`` RoI pooling and the
Mask R-CNN, cascade and Sparse R-CNN heads; ``losses.py`` the GFL/ATSS losses; ``transform.py`` resize + pad.
"""
