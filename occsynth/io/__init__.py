"""Bytes in and out: archives, images, shards and the dataset folder that holds them."""
