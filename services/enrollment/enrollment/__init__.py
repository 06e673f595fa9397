"""enrollment: members, referral codes, purchase/activity intake, the member status view."""
