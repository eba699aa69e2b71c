"""Personal data never reaches a log in full; counts and rates stay readable."""

from pipeline.masking import mask_email, mask_phone, mask_text


def test_numbers_and_addresses_are_masked():
    assert mask_phone("+447700900123") == "+44*******123"
    assert mask_email("jane.doe@example.com") == "j***@example.com"
    text = mask_text("sent to +44 7700 900123, wa_id 447700900123, mail jane.doe@example.com")
    assert "7700 900123" not in text and "447700900123" not in text and "jane.doe" not in text
    assert "+44*******123" in text and "j***@example.com" in text


def test_counts_rates_and_times_are_left_alone():
    line = "dispatch: 2607 sent, 12 failed of 2607 (354/s) at 16:17:25.614, USD 160.3009"
    assert mask_text(line) == line
