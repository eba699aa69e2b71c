"""Scaffolding the tests share (servers, browsers, fakes, waits); never tests themselves, so no test
module imports another."""
