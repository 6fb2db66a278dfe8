"""Tests of llava_core.data: record formats and the data job's operations."""
