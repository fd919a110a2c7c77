"""The name rules every wing shares: products, cameras, topics (a leaf: imports nothing of ours)."""

PRODUCT_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"  # also a folder name: no slashes, no leading dot
CAMERA_RE = r"^[A-Za-z0-9_.-]{1,64}$"
TOPIC_RE = r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$"
