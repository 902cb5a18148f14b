package e2ee

import (
	"testing"
)

func BenchmarkSessionSetup(b *testing.B) {
	r := newDetRand(1)
	ad, bd := newDevice(b, r), newDevice(b, r)
	bundle := bd.bundle(-1, -1) // last-resort keys: reusable across iterations
	msg := []byte("hello")
	b.ReportAllocs()
	for b.Loop() {
		a, err := InitiateSession(nil, ad.identity, bundle)
		if err != nil {
			b.Fatal(err)
		}
		ct, err := a.Encrypt(msg)
		if err != nil {
			b.Fatal(err)
		}
		if _, _, _, err := AcceptSession(nil, bd.identity, bd.store, ct); err != nil {
			b.Fatal(err)
		}
	}
}

func benchPayload() []byte { return make([]byte, 256) }

func BenchmarkEncrypt(b *testing.B) {
	alice, _, _, _ := establish(b, 2)
	msg := benchPayload()
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := alice.Encrypt(msg); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecrypt(b *testing.B) {
	alice, bob, _, _ := establish(b, 3)
	msg := benchPayload()
	const chunk = 512
	cts := make([][]byte, 0, chunk)
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if len(cts) == 0 {
			b.StopTimer()
			for range chunk {
				ct, _ := alice.Encrypt(msg)
				cts = append(cts, ct)
			}
			b.StartTimer()
		}
		if _, err := bob.Decrypt(cts[0]); err != nil {
			b.Fatal(err)
		}
		cts = cts[1:]
	}
}

func BenchmarkGroupEncrypt(b *testing.B) {
	sk, _ := NewSenderKey(newDetRand(4))
	msg := benchPayload()
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := sk.Encrypt(msg); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkGroupDecrypt(b *testing.B) {
	sk, _ := NewSenderKey(newDetRand(5))
	recv, _ := NewSenderKeyReceiver(sk.Distribution())
	msg := benchPayload()
	const chunk = 256
	cts := make([][]byte, 0, chunk)
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if len(cts) == 0 {
			b.StopTimer()
			for range chunk {
				ct, _ := sk.Encrypt(msg)
				cts = append(cts, ct)
			}
			b.StartTimer()
		}
		if _, err := recv.Decrypt(cts[0]); err != nil {
			b.Fatal(err)
		}
		cts = cts[1:]
	}
}

func BenchmarkSafetyNumber(b *testing.B) {
	r := newDetRand(6)
	x, _ := GenerateIdentityKeyPair(r)
	y, _ := GenerateIdentityKeyPair(r)
	b.ReportAllocs()
	for b.Loop() {
		SafetyNumber("alice", []*IdentityKey{x.PublicKey()}, "bob", []*IdentityKey{y.PublicKey()})
	}
}
