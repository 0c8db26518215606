require_relative '../../spec_helper'
require 'fileutils'
require 'ohai'
require 'tmpdir'

# The fleet view's Ohai plugin, run by Ohai itself against a stand-in `backup-agent` that prints
# a canned `status --json` document (or fails).
describe 'Ohai plugin backup_agent' do
  let(:plugin_source) { File.expand_path('../../../ohai/backup_agent.rb', __dir__) }
  hour = 3600

  let(:dir) { Dir.mktmpdir('backup-agent-ohai') }
  let(:now) { Time.now.utc }
  let(:config) { File.join(dir, 'config.yaml') }
  let(:agent) { File.join(dir, 'backup-agent') }
  let(:settings) { { 'bin' => agent, 'config' => config } }

  def at(seconds_ago)
    (now - seconds_ago).iso8601
  end

  def job(name, schedule, **fields)
    { 'job' => name, 'type' => 'files', 'schedule' => schedule, 'next_run' => nil, 'running_since' => nil,
      'result' => 'never run', 'last_success' => nil, 'consecutive_failures' => 0, 'snapshots' => nil,
      'error' => nil, 'last_prune' => nil, 'prune_result' => nil, 'prune_error' => nil,
      'prune_snapshots_forgotten' => nil, 'last_gc' => nil }.merge(fields.transform_keys(&:to_s))
  end

  def fake_agent(document, exit_code: 0)
    File.write(File.join(dir, 'status.json'), JSON.generate(document))
    File.write(agent, "#!/bin/sh\n[ \"$2\" = '#{config}' ] || exit 9\ncat '#{dir}/status.json'\nexit #{exit_code}\n")
    File.chmod(0o755, agent)
  end

  def collect
    FileUtils.cp(plugin_source, dir)
    # Where client.rb's ohai.plugin[:backup_agent][:settings_file] points the plugin.
    settings_file = File.join(dir, 'fleet_view.json')
    File.write(settings_file, JSON.generate(settings))
    saved = Ohai.config[:plugin_path]
    Ohai.config[:plugin_path] = [dir]
    Ohai.config[:plugin][:backup_agent][:settings_file] = settings_file
    system = Ohai::System.new
    system.all_plugins('backup_agent')
    system.data
  ensure
    Ohai.config[:plugin_path] = saved
    Ohai.config[:plugin].delete(:backup_agent)
  end

  before { File.write(config, "jobs: {}\n") }
  after { FileUtils.rm_rf(dir) }

  it 'reports each job and flags the node when a job is stale' do
    fake_agent({ 'node' => 'web-01', 'environment' => 'staging', 'daemon' => { 'running' => true, 'pid' => 42 },
                 'jobs' => [
                   job('fresh', 'every 6 hours', result: 'success', last_success: at(7 * hour), snapshots: 12),
                   job('late', 'daily at 02:00', result: 'success', last_success: at(49 * hour), snapshots: 3),
                   job('failing', 'hourly at :15', result: 'failed', consecutive_failures: 2,
                                                   error: 'NoSuchBucket: backup-agent-staging'),
                   job('manual', nil),
                   job('new', 'weekly on monday at 03:00 UTC'),
                 ] })
    data = collect
    status = data['backup_agent']['status']

    expect(data['backup_agent_stale']).to be true
    expect(status['stale']).to be true
    expect(status['stale_jobs']).to eq(%w(failing late))
    expect(status['daemon_running']).to be true
    expect(status['jobs'].keys).to eq(%w(fresh late failing manual new))
    expect(status['jobs']['fresh']).to include('result' => 'success', 'snapshots' => 12, 'stale' => false,
                                               'last_success' => at(7 * hour), 'schedule' => 'every 6 hours')
    expect(status['jobs']['late']['stale']).to be true
    expect(status['jobs']['failing']).to include('consecutive_failures' => 2, 'stale' => true)
    expect(status['jobs']['manual']['stale']).to be false
    expect(status['jobs']['new']['stale']).to be false
  end

  it 'reports the last prune of each job and lists the jobs whose prune failed' do
    fake_agent({ 'daemon' => { 'running' => true }, 'jobs' => [
                 job('etc', 'every 6 hours', result: 'success', last_success: at(hour),
                                             last_prune: at(hour), prune_result: 'success', prune_snapshots_forgotten: 1,
                                             prune_objects_deleted: 4, last_gc: at(5 * hour), prune_error: nil),
                 job('vols', 'daily at 03:00', result: 'success', last_success: at(hour),
                                               last_prune: at(hour), prune_result: 'failed',
                                               prune_error: 'UnauthorizedOperation on snap-secret'),
                 job('manual', nil),
               ] })
    status = collect['backup_agent']['status']
    expect(status['jobs']['etc']).to include('last_prune' => at(hour), 'prune_result' => 'success',
                                             'prune_snapshots_forgotten' => 1, 'last_gc' => at(5 * hour))
    expect(status['jobs']['vols']).to include('prune_result' => 'failed')
    expect(status['jobs']['manual']).to include('last_prune' => nil, 'prune_result' => nil)
    expect(status['prune_failed_jobs']).to eq(%w(vols))
    expect(status['stale']).to be false # the backups themselves are fine
    expect(JSON.generate(status)).not_to include('snap-secret')
  end

  it 'lists the jobs of a write-only node, whose pruning happens elsewhere, apart from failed prunes' do
    fake_agent({ 'daemon' => { 'running' => true }, 'jobs' => [
                 job('etc', 'every 6 hours', result: 'success', last_success: at(hour), last_prune: at(hour),
                                             prune_result: 'elsewhere', prune_locked_skipped: nil),
               ] })
    status = collect['backup_agent']['status']
    expect(status['prune_elsewhere_jobs']).to eq(%w(etc))
    expect(status['prune_failed_jobs']).to eq([])
    expect(status['stale']).to be false
  end

  it 'reports drills and costs, and flags the node when a drill failed' do
    fake_agent({ 'daemon' => { 'running' => true }, 'jobs' => [
                 job('etc', 'every 6 hours', result: 'success', last_success: at(hour), last_drill: at(hour),
                                             drill_result: 'ok', drill_failed: false, last_drill_success: at(hour),
                                             drill_rto_estimate_s: 42.5, stored_bytes: 1000, monthly_usd: 0.25),
                 job('db', 'daily at 03:00', result: 'success', last_success: at(hour), last_drill: at(hour),
                                             drill_result: 'failed', drill_failed: true,
                                             drill_error: '/etc/secret-file: content does not match',
                                             stored_bytes: 10, monthly_usd: 0.5),
                 job('manual', nil),
               ] })
    data = collect
    status = data['backup_agent']['status']
    expect(data['backup_agent_drill_failed']).to be true
    expect(status['drill_failed_jobs']).to eq(%w(db))
    expect(status['jobs']['etc']).to include('drill_result' => 'ok', 'drill_rto_estimate_s' => 42.5,
                                             'last_drill_success' => at(hour), 'monthly_usd' => 0.25)
    expect(status['monthly_usd']).to eq(0.75)
    expect(status['stale']).to be false # the backups themselves run
    expect(JSON.generate(data)).not_to include('secret-file')
  end

  it 'does not flag a node whose jobs were never drilled' do
    fake_agent({ 'daemon' => {}, 'jobs' => [job('etc', 'every 6 hours', result: 'success', last_success: at(hour))] })
    data = collect
    expect(data['backup_agent_drill_failed']).to be false
    expect(data['backup_agent']['status']).to include('drill_failed_jobs' => [], 'monthly_usd' => nil)
  end

  it 'copies no error text, node or environment from the agent' do
    fake_agent({ 'node' => 'web-01', 'environment' => 'staging', 'daemon' => { 'running' => false },
                 'jobs' => [job('failing', 'every 1 hours', result: 'failed', consecutive_failures: 1,
                                                            error: 'cannot list s3://secret-bucket/')] })
    text = JSON.generate(collect)
    expect(text).not_to include('secret-bucket')
    expect(text).not_to include('error')
  end

  it 'flags a job that never ran although its config is older than the schedule allows' do
    fake_agent({ 'daemon' => { 'running' => false }, 'jobs' => [job('etc', 'every 1 hours')] })
    File.utime(now - 3 * hour, now - 3 * hour, config)
    expect(collect['backup_agent']['status']['stale_jobs']).to eq(%w(etc))
  end

  it 'takes the tolerance from stale_after_periods' do
    settings['stale_after_periods'] = 1
    fake_agent({ 'daemon' => {}, 'jobs' => [job('etc', 'every 6 hours', result: 'success', last_success: at(7 * hour))] })
    expect(collect['backup_agent_stale']).to be true
  end

  it 'falls back to the default tolerance when stale_after_periods is not a number' do
    settings['stale_after_periods'] = 'often'
    fake_agent({ 'daemon' => {}, 'jobs' => [job('etc', 'every 6 hours', result: 'success', last_success: at(7 * hour))] })
    expect(collect['backup_agent_stale']).to be false
  end

  it 'flags the node when the agent cannot report' do
    fake_agent({ 'jobs' => [] }, exit_code: 2)
    status = collect['backup_agent']['status']
    expect(status).to include('stale' => true, 'error' => '`backup-agent status --json` exited 2')
  end

  it 'reports nothing where the agent is not installed' do
    data = collect
    expect(data).not_to have_key('backup_agent')
    expect(data).not_to have_key('backup_agent_stale')
  end

  it 'reads schedule strings with the agent\'s grammar (the shared cases)' do
    cases = JSON.parse(File.read(File.expand_path('../../../../../tests/fixtures/schedule_cases.json', __dir__)))
    load plugin_source
    plugin = Ohai::NamedPlugin::BackupAgent.new({}, Ohai::Log)
    cases['schedules'].each do |c|
      expect([c['text'], plugin.schedule_period(c['text'])]).to eq([c['text'], c['period']])
    end
  end
end
