"""Class names of the datasets, in class-id order (torch-free: the report reads them too)."""

DIGITS_CLASSES = ("background",) + tuple(str(d) for d in range(10))
VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "dining table", "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa", "train",
               "tv/monitor")
CITYSCAPES_CLASSES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                      "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
                      "bicycle")
CLASSES = {"digits": DIGITS_CLASSES, "voc": VOC_CLASSES, "cityscapes": CITYSCAPES_CLASSES,
           "gta5_cityscapes": CITYSCAPES_CLASSES}
