"""The audience stages, load and validate: an opt-in CSV read as text with its row numbers, every
number classified as libphonenumber does, then consent, blocked countries, suppressions, the
frequency cap, the messaging window and time zones.

Hands to render: the rows that may be sent to (E.164 number or id, region, type, the row's
columns) and the rejected ones with a reason from `pipeline.records`.
"""
