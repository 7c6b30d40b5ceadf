"""netboot.dhcp."""
