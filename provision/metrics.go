package provision

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the provisioning counters that /metrics exposes.
type Metrics struct {
	boots         *prometheus.CounterVec
	callbacks     *prometheus.CounterVec
	installs      *prometheus.CounterVec
	phaseSeconds  *prometheus.HistogramVec
	dhcpDecisions *prometheus.CounterVec
	refusals      *prometheus.CounterVec
}

// NewMetrics registers the provisioning metrics with reg (nil: none).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		boots: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pxe_anywhere_boots_total", Help: "iPXE scripts served, by what the machine was told to do.",
		}, []string{"action"}),
		callbacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pxe_anywhere_installer_up_total", Help: "Installers found up, by how (callback, ssh-poll) or rejected.",
		}, []string{"how"}),
		installs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pxe_anywhere_installs_total", Help: "Installs that ended, by result.",
		}, []string{"result"}),
		phaseSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "pxe_anywhere_install_phase_seconds", Help: "Duration of install phases.",
			Buckets: []float64{1, 5, 15, 30, 60, 120, 300, 600, 1200, 3600},
		}, []string{"phase", "result"}),
		dhcpDecisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pxe_anywhere_dhcp_decisions_total", Help: "PXE clients seen by DHCP, by decision.",
		}, []string{"decision"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pxe_anywhere_boot_refusals_total", Help: "Boot requests refused by the trust checks, by what was asked and why.",
		}, []string{"what", "why"}),
	}
	if reg != nil {
		reg.MustRegister(m.boots, m.callbacks, m.installs, m.phaseSeconds, m.dhcpDecisions, m.refusals)
	}
	return m
}
