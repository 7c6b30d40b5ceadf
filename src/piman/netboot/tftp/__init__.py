"""netboot.tftp."""
