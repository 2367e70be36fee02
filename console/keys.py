"""Typed keys of what the console's app holds."""

from aiohttp import web

from console.services import Services
from paylayer.callers import CallerTokens
from paylayer.catalogue import Catalogue

SERVICES_KEY = web.AppKey("services", Services)
CALLER_TOKENS_KEY = web.AppKey("caller_tokens", CallerTokens)
CATALOGUE_KEY = web.AppKey("catalogue", Catalogue)
