// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

//go:build !race

package gateway

import "github.com/petrelchat/petrel/third_party/nbio/nbhttp"

// instrumentForRace and raceHandoff do nothing outside race builds (see race_on.go).
func instrumentForRace(*nbhttp.Engine) {}

func raceHandoff() {}

// poisonPooled is off outside race builds (see race_on.go).
const poisonPooled = false
