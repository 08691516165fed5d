"""Second stages: RoI pooling and mask targets (:mod:`.roi_align`), the Mask R-CNN heads (:mod:`.mask_rcnn`),
the cascade heads (:mod:`.cascade`) and Sparse R-CNN's learned proposals and DII heads (:mod:`.sparse`).
"""
