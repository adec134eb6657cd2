"""Helpers shared by the test tiers: free ports, process inspection, fake services."""
