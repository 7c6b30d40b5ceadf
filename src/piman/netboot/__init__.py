"""netboot."""
