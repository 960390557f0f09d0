"""Who the node talks to, and how: AE titles (PS3.5 §6.2), TLS (PS3.15 Annex B.1), destinations.

These are the DICOM parts of the configuration (:mod:`dicomnode.config` reads them from
``[node]``, ``[node.tls]`` and ``[[destinations]]``), kept here so that the association code
(:mod:`dicomnode.dicom.scu`, :mod:`dicomnode.pipeline.receiver`) depends on DICOM rules only. The
security profile is described in docs/dicom.md.
"""

from __future__ import annotations

import re
import ssl
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

# PS3.5 §6.2, VR "AE": at most 16 characters of the default repertoire, no backslash, no control
# characters; leading/trailing spaces are not significant, so an all-space title is empty.
_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")


def validate_ae_title(value: str) -> str:
    """Return ``value`` stripped if it is a valid Application Entity title (PS3.5 §6.2, VR AE)."""
    if not isinstance(value, str):
        raise ValueError("an AE title must be a string")
    stripped = value.strip()
    if not stripped or not _AE_TITLE.match(value):
        raise ValueError(
            f"{value!r} is not a valid AE title (1-16 printable ASCII characters, no backslash; PS3.5 §6.2)"
        )
    return stripped


AETitle = Annotated[str, AfterValidator(validate_ae_title)]
Port = Annotated[int, Field(ge=1, le=65535)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TLSServer(_Strict):
    """TLS for the receiver (PS3.15 Annex B.1, "The Basic TLS Secure Transport Connection Profile")."""

    cert: Path
    key: Path
    ca: Path | None = None  # CA bundle that signs allowed client certificates
    require_client_cert: bool = False

    @model_validator(mode="after")
    def _client_cert_needs_ca(self) -> TLSServer:
        if self.require_client_cert and self.ca is None:
            raise ValueError("require_client_cert = true needs 'ca' (the CA that signs client certificates)")
        return self

    def context(self) -> ssl.SSLContext:
        """A TLS 1.2+ server context from the certificate, key and (client) CA."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(certfile=self.cert, keyfile=self.key)
        if self.ca is not None:
            context.load_verify_locations(cafile=self.ca)
        context.verify_mode = ssl.CERT_REQUIRED if self.require_client_cert else ssl.CERT_NONE
        return context


class TLSClient(_Strict):
    """TLS towards a destination: the CA to trust, optionally our own certificate for mutual TLS."""

    ca: Path | None = None  # None: the system trust store
    cert: Path | None = None
    key: Path | None = None
    server_name: str | None = None  # host name to check in the peer's certificate; default: host

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> TLSClient:
        if (self.cert is None) != (self.key is None):
            raise ValueError("a client certificate needs both 'cert' and 'key'")
        return self

    def arguments(self, host: str) -> tuple[ssl.SSLContext, str]:
        """``tls_args`` for pynetdicom: a TLS 1.2+ context trusting ``ca`` (or the system store), and
        the host name to check."""
        context = ssl.create_default_context(cafile=str(self.ca) if self.ca else None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.cert is not None and self.key is not None:
            context.load_cert_chain(str(self.cert), str(self.key))
        return context, self.server_name or host


class Destination(_Strict):
    """A DICOM peer that receives our results (a PACS), or any peer named on the command line."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    host: str = Field(min_length=1)
    port: Port
    ae_title: AETitle
    tls: TLSClient | None = None
