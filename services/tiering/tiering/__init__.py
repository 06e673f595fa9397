"""tiering service: tier policy, qualification, upgrades, tier history."""
