"""Scenario simulator: the real planner and cycle on a virtual clock (cloudvac simulate)."""
