"""Training targets: max-IoU (:mod:`.max_iou`), ATSS (:mod:`.atss`) and Hungarian (:mod:`.hungarian`)
assignment, and the random sampler of the RPN and R-CNN stages (:mod:`.random_sampler`).
"""
