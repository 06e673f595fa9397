"""benefits: the benefit catalog per tier, members' entitlements, redemptions."""
