"""Staged studies (pilot -> selection -> stages -> reports): the scheduler, the v1 and v2 rules, the reports."""
