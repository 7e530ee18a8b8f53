"""Path converters. Ids in paths are UUIDs in any letter case (CONTRACT section 14): Django's own
`uuid` converter takes lower case only, so an upper-case id of one's own run would be a 404."""

import uuid


class AnyCaseUUIDConverter:
    regex = "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"

    def to_python(self, value: str) -> uuid.UUID:
        return uuid.UUID(value)

    def to_url(self, value) -> str:
        return str(value)
