"""EuroSAT data: where it comes from, how it is partitioned, decoded, checked, augmented and downloaded."""
