"""Steering: where each client goes, from its location, the policy and the health view."""
