"""Data loading: the shared preprocessing and image-folder reading."""
from dataset.image_folder import IMAGE_EXTENSIONS, FaceFolder, collate_faces, find_images
from dataset.transforms import (INPUT_SIZE, MEAN, STD, load_face, normalize, official_transform, open_rgb,
                                preprocess, preprocess_batch, resize_face)

__all__ = ["IMAGE_EXTENSIONS", "INPUT_SIZE", "MEAN", "STD", "FaceFolder", "collate_faces", "find_images",
           "load_face", "normalize", "official_transform", "open_rgb", "preprocess", "preprocess_batch",
           "resize_face"]
