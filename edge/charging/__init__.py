"""Request sources: what the charging controller asks of each connector, and what the cabinet reports back."""
