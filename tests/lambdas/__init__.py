"""Tests of the Lambda handlers (JSON fixture events in events/)."""
