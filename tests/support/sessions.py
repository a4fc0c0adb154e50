"""Exam sessions made the way staff make them: through the REST API with a Bearer token."""

from __future__ import annotations

import aiohttp


async def create_session(base: str, token: str, candidate: str = "Ada Lovelace", exam: str = "Math 101") -> dict:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
        async with http.post(f"{base}/api/sessions", json={"candidate": candidate, "exam": exam}) as response:
            assert response.status == 201, await response.text()
            return await response.json()
