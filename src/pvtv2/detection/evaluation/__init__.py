"""Scores: COCO AP (:mod:`.coco_eval`), parameters and GFLOPs (:mod:`.complexity`), the paper's Table 4
(:mod:`.table4`).
"""
